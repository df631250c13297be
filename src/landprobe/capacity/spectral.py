"""Spectral complexity of Bartlett, Foster & Telgarsky 2017 ("Spectrally-normalized margin bounds").

    R_A = (Π_i ρ_i ‖A_i‖_σ) · (Σ_i ‖A_iᵀ − M_iᵀ‖_{2,1}^{2/3} / ‖A_i‖_σ^{2/3})^{3/2}

with ``A_i`` the layers' matrices, ``M_i`` reference matrices, ``ρ_i`` the activations'
Lipschitz constants (1 for ReLU), ``‖·‖_σ`` the spectral norm and ``‖Bᵀ‖_{2,1}`` the sum of the
ℓ2 norms of the columns of ``Bᵀ``, i.e. of the rows of ``B`` (one per output unit).

Convention:
    - Layers are the selected parameters with at least 2 dimensions, in the model's order,
      read as ``W.reshape(W.shape[0], -1)`` (a Conv weight ``(out, in, k, k)`` as
      ``(out, in·k·k)``; not the convolution's operator norm). Biases are left out (Bartlett et
      al.'s networks have none).
    - ``reference=None`` takes ``M_i = 0``; pass the initial weights (a state_dict, module or
      ParamVector) to measure the distance from initialisation, as in their Theorem 1.1.
    - Computed in float64 (exact SVDs). A layer with ``‖A_i‖_σ = 0`` makes ``R_A = 0``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from landprobe.capacity._common import as_matrix, check_model, weight_names
from landprobe.params import Selector, as_param_vector, select

__all__ = ["spectral_complexity"]


def spectral_complexity(model: nn.Module, *, reference: Any = None, subnet: Selector | None = None,
                        lipschitz: float = 1.0) -> float:
    """Bartlett et al. 2017's spectral complexity ``R_A`` of the model's (or a subnet's) layers.

    Args:
        model: Any ``nn.Module``; its ≥2-D parameters are the layers.
        reference: The reference matrices ``M_i``: ``None`` (zeros) or the initial weights as a
            state_dict, module or ParamVector of the same architecture.
        subnet: Selector of the layers taken (default all).
        lipschitz: ``ρ_i`` for every layer (1 for ReLU; Bartlett et al.'s ρ_i).

    Returns:
        ``R_A`` as a Python float (1.0 for a model without layers: empty product and sum... see
        Raises).

    Raises:
        ValueError: If the selection holds no parameter with 2 or more dimensions, ``lipschitz``
            is not positive, or ``reference`` lacks a layer or has another shape.

    Example:
        >>> import torch
        >>> from landprobe.capacity import spectral_complexity
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2, bias=False), torch.nn.ReLU(),
        ...                           torch.nn.Linear(2, 1, bias=False))
        >>> with torch.no_grad():
        ...     _ = net[0].weight.copy_(torch.eye(2)); _ = net[2].weight.copy_(torch.tensor([[3.0, 4.0]]))
        >>> # ||A1||=1, ||A1^T||_21 = 2; ||A2||=5, ||A2^T||_21 = 5: (1*5) * (2**(2/3) + 1)**1.5
        >>> round(spectral_complexity(net), 9) == round(5 * (2 ** (2 / 3) + 1) ** 1.5, 9)
        True
    """
    check_model(model, "spectral_complexity")
    if isinstance(lipschitz, bool) or not isinstance(lipschitz, (int, float)) or not (math.isfinite(lipschitz) and lipschitz > 0):
        raise ValueError(f"lipschitz={lipschitz!r}; expected a positive float (1.0 for ReLU)")
    names = weight_names(model, select(model, subnet))
    if not names:
        raise ValueError(f"spectral_complexity: the selection {subnet!r} of {type(model).__name__} holds no "
                         f"parameter with 2 or more dimensions (no layer matrix); select Linear/Conv weights")
    params = dict(model.named_parameters())
    ref = None if reference is None else as_param_vector(reference, model, names=names, what="reference")
    prod = 1.0
    total = 0.0
    for n in names:
        a = as_matrix(params[n].detach().to(torch.float64))
        m = a if ref is None else as_matrix(ref[n].to(device=a.device, dtype=torch.float64))
        diff = a if ref is None else a - m
        s = float(torch.linalg.matrix_norm(a, ord=2))
        if s == 0.0:
            return 0.0
        l21 = float(torch.linalg.vector_norm(diff, 2, dim=1).sum())   # rows of A = columns of A^T
        prod *= lipschitz * s
        total += l21 ** (2.0 / 3.0) / s ** (2.0 / 3.0)
    return float(prod * total ** 1.5)

"""Per-subnet parameter norms: L1, L2, Frobenius and spectral norms of layers.

Convention:
    - For the parameters θ of one subnet (biases and every other parameter included):
      ``l1`` = Σ|θ|, ``l2_squared`` = Σθ², ``l2`` = √Σθ².
    - *Layers* are the subnet's parameters with at least 2 dimensions (Linear and Conv weights,
      embeddings). Each is read as the matrix ``W.reshape(W.shape[0], -1)``: a Conv weight
      ``(out, in, kh, kw)`` becomes ``(out, in·kh·kw)``. Its spectral norm is that matrix's largest
      singular value, **not** the operator norm of the convolution on images (which is larger in
      general; :func:`conv_operator_norm` computes that one by power iteration).
    - ``frobenius_sum`` = Σ_l ‖W_l‖_F, ``frobenius_product`` = Π_l ‖W_l‖_F (the product appears in
      Neyshabur, Tomioka & Srebro 2015's bound), ``spectral_sum`` = Σ_l ‖W_l‖_σ,
      ``spectral_product`` = Π_l ‖W_l‖_σ (the Lipschitz bound of a net with 1-Lipschitz
      activations), ``spectral_max`` = max_l ‖W_l‖_σ. A subnet without layers gets 0 for the sums
      and the maximum, 1 for the products.
    - Values are computed in float64 and returned as Python floats.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from landprobe.capacity._common import as_matrix, check_model, scopes, weight_names
from landprobe.common.checks import check_int
from landprobe.params import Selector

__all__ = ["NORM_MEASURES", "subnet_norms", "spectral_norm", "conv_operator_norm"]

NORM_MEASURES = ("l1", "l2", "l2_squared", "frobenius_sum", "frobenius_product",
                 "spectral_sum", "spectral_product", "spectral_max")


def spectral_norm(weight: Tensor) -> float:
    """Largest singular value of ``weight.reshape(weight.shape[0], -1)``, exactly (SVD in float64).

    Args:
        weight: A tensor with at least 2 dimensions (a Linear or Conv weight).

    Raises:
        ValueError: If ``weight`` has fewer than 2 dimensions.

    Example:
        >>> import torch
        >>> from landprobe.capacity import spectral_norm
        >>> spectral_norm(torch.tensor([[3.0, 0.0], [0.0, -5.0]]))    # singular values 5 and 3
        5.0
    """
    if not isinstance(weight, Tensor) or weight.dim() < 2:
        raise ValueError(f"spectral_norm needs a tensor with at least 2 dimensions (a layer's weight), got "
                         f"{tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__}")
    m = as_matrix(weight.detach()).to(torch.float64)
    if m.numel() == 0:
        return 0.0
    return float(torch.linalg.matrix_norm(m, ord=2))


def subnet_norms(model: nn.Module, subnets: Mapping[Any, Selector] | Sequence[Selector] | None = None
                 ) -> dict[str, dict[str, float]]:
    """L1, L2, Frobenius and spectral norms of the whole model and of each subnet.

    Args:
        model: Any ``nn.Module``.
        subnets: ``None`` (the whole model only), a mapping name → selector, or a list of
            selectors (named by themselves). Subnets may overlap here (a measure, not a penalty).

    Returns:
        ``{"model": {measure: value}, <subnet>: {...}}`` with the measures of
        :data:`NORM_MEASURES` (see the module's Convention).

    Raises:
        ValueError: If a selector matches nothing, or a subnet is called ``"model"``.

    Example:
        >>> import torch, landprobe as lp
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1, bias=False))
        >>> with torch.no_grad():
        ...     _ = net[0].weight.copy_(torch.tensor([[3.0, 0.0], [0.0, 4.0]]))
        ...     _ = net[0].bias.fill_(1.0); _ = net[1].weight.fill_(-2.0)
        >>> from landprobe.capacity import subnet_norms
        >>> n = subnet_norms(net, {"first": "0"})
        >>> n["first"]["l1"], n["first"]["l2_squared"], n["first"]["spectral_max"]  # 3+4+1+1, 9+16+1+1, 4
        (9.0, 27.0, 4.0)
        >>> n["model"]["spectral_product"]                    # 4 * ||(-2, -2)|| = 4 * sqrt(8)
        11.313708498984761
    """
    check_model(model, "subnet_norms")
    params = dict(model.named_parameters())
    out: dict[str, dict[str, float]] = {}
    for key, names in scopes(model, subnets).items():
        ts = [params[n].detach().to(torch.float64) for n in names]
        l1 = float(sum(t.abs().sum() for t in ts)) if ts else 0.0
        l2sq = float(sum(t.pow(2).sum() for t in ts)) if ts else 0.0
        layers = weight_names(model, names)
        fro = [float(torch.linalg.vector_norm(params[n].detach().to(torch.float64))) for n in layers]
        spec = [spectral_norm(params[n]) for n in layers]
        out[key] = {
            "l1": l1, "l2": math.sqrt(l2sq), "l2_squared": l2sq,
            "frobenius_sum": float(sum(fro)), "frobenius_product": float(math.prod(fro)),
            "spectral_sum": float(sum(spec)), "spectral_product": float(math.prod(spec)),
            "spectral_max": float(max(spec)) if spec else 0.0,
        }
    return out


def conv_operator_norm(conv: nn.Module, input_size: Sequence[int], *, iterations: int = 200,
                       tol: float = 1e-10, seed: int = 0) -> float:
    """Operator 2-norm of a convolution as a linear map on images of one size (no bias).

    Power iteration on ``Wᵀ W`` where ``W`` is the convolution (``F.conv{1,2,3}d`` with the
    module's stride, padding, dilation and groups) and ``Wᵀ`` its adjoint (the matching
    transposed convolution), from a seeded Gaussian start, in float64. Zero padding only.
    This is the norm Bartlett et al.'s bound asks of a convolutional layer; the reshaped-matrix
    norm of :func:`spectral_norm` differs from it (neither bounds the other tightly).

    Args:
        conv: An ``nn.Conv1d``, ``nn.Conv2d`` or ``nn.Conv3d`` with ``padding_mode="zeros"``.
        input_size: Spatial size of the input, e.g. ``(32, 32)`` for a Conv2d.
        iterations: Most power iterations. tol: Stop when the estimate changes less than this
            (relative). seed: Seed of the start vector (own generator).

    Raises:
        TypeError: If ``conv`` is not a Conv1d/2d/3d. ValueError: On a wrong ``input_size``
            length, a padding mode other than zeros, or string padding other than "valid".

    Example:
        >>> import torch
        >>> from landprobe.capacity import conv_operator_norm
        >>> conv = torch.nn.Conv1d(1, 1, 2, bias=False)
        >>> _ = torch.nn.init.constant_(conv.weight, 1.0)   # y_i = x_i + x_(i+1) on 3 inputs
        >>> round(conv_operator_norm(conv, (3,)), 9)        # the 2x3 matrix [[1,1,0],[0,1,1]]: sqrt(3)
        1.732050808
    """
    from torch.nn import functional as F

    kinds = {nn.Conv1d: (1, F.conv1d, F.conv_transpose1d), nn.Conv2d: (2, F.conv2d, F.conv_transpose2d),
             nn.Conv3d: (3, F.conv3d, F.conv_transpose3d)}
    spec = next((v for k, v in kinds.items() if type(conv) is k or isinstance(conv, k)), None)
    if spec is None:
        raise TypeError(f"conv_operator_norm needs an nn.Conv1d/2d/3d, got {type(conv).__name__}; for a "
                        f"Linear weight use spectral_norm(layer.weight)")
    d, fwd, adj = spec
    size = tuple(int(s) for s in input_size)
    if len(size) != d:
        raise ValueError(f"input_size={tuple(input_size)!r} has {len(size)} entries; a Conv{d}d needs {d} (spatial size)")
    if conv.padding_mode != "zeros":
        raise ValueError(f"conv padding_mode={conv.padding_mode!r}; only 'zeros' has the transposed "
                         f"convolution as its adjoint here")
    padding = conv.padding
    if isinstance(padding, str):
        if padding != "valid":
            raise ValueError(f"conv padding={padding!r}; pass a conv with numeric padding (or 'valid')")
        padding = (0,) * d
    iterations = check_int("iterations", iterations, 1)
    w = conv.weight.detach().to(torch.float64)
    kw = dict(stride=conv.stride, padding=padding, dilation=conv.dilation, groups=conv.groups)
    gen = torch.Generator().manual_seed(int(seed))
    x = torch.randn((1, conv.in_channels, *size), generator=gen, dtype=torch.float64).to(w.device)
    x /= x.norm()
    y = fwd(x, w, **kw)
    out_pad = []
    for i in range(d):
        full = (y.shape[2 + i] - 1) * kw["stride"][i] - 2 * padding[i] + kw["dilation"][i] * (w.shape[2 + i] - 1) + 1
        out_pad.append(size[i] - full)
    est = 0.0
    for _ in range(iterations):
        y = fwd(x, w, **kw)
        z = adj(y, w, output_padding=tuple(out_pad), **kw)
        nz = float(z.norm())
        if nz == 0.0:
            return 0.0
        new = math.sqrt(float((z * x).sum()))          # ||W x|| for the current unit x
        x = z / nz
        if abs(new - est) <= tol * max(new, 1e-300):
            est = new
            break
        est = new
    return float(fwd(x, w, **kw).norm())

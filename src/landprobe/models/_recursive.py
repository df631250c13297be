"""Shared parts of the recursive super-resolution networks (WARSHIP-XZNet β, DRCN)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn


class SROutput(NamedTuple):
    """What a recursive SR network returns: the final image and one image per recursion.

    Attributes:
        final: ``(B, 1, H, W)``, the weighted sum ``Σ_r w_r y_r`` of the intermediate images.
        intermediates: list of ``R`` tensors ``(B, 1, H, W)``, ``y_r = Rnet(h_r) + x``.

    Example:
        >>> import torch
        >>> from landprobe import models
        >>> out = models.SROutput(torch.zeros(1, 1, 2, 2), [torch.ones(1, 1, 2, 2)])
        >>> out.final.shape, len(out.intermediates)
        (torch.Size([1, 1, 2, 2]), 1)
    """

    final: Tensor
    intermediates: list[Tensor]


def _check_positive_int(name: str, value: object, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}={value!r} ({type(value).__name__}); expected a positive int. {hint}")
    if value < 1:
        raise ValueError(f"{name}={value!r}; expected a positive int (>= 1). {hint}")
    return value


def _scaled(width: float, n: int) -> int:
    return max(1, int(round(width * n)))


def _check_width(width: object) -> float:
    if isinstance(width, bool) or not isinstance(width, (int, float)):
        raise TypeError(f"width={width!r} ({type(width).__name__}); expected a positive float "
                        f"multiplier of the feature widths, e.g. width=0.25 for a small model.")
    if not math.isfinite(width) or width <= 0:
        raise ValueError(f"width={width!r}; expected a finite float > 0, e.g. width=1.0 (paper size) "
                         f"or width=0.25 (reduced preset).")
    return float(width)


def identity_init_(conv: nn.Conv2d) -> None:
    """Zero a square conv except its self-connections, which become 1 at the kernel centre."""
    if conv.in_channels != conv.out_channels:
        raise ValueError(f"identity init needs a square conv, got {conv.in_channels}->{conv.out_channels}")
    with torch.no_grad():
        conv.weight.zero_()
        kh, kw = conv.kernel_size
        idx = torch.arange(conv.out_channels)
        conv.weight[idx, idx, kh // 2, kw // 2] = 1.0
        if conv.bias is not None:
            conv.bias.zero_()


def he_init_(conv: nn.Conv2d) -> None:
    """He et al. (2015) normal init, std = sqrt(2 / fan_in); bias zero."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def check_input(x: object, model: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{model} got x of type {type(x).__name__}; expected a Tensor (B, 1, H, W). "
                        f"Convert with torch.as_tensor(x).")
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"{model} got x of shape {tuple(x.shape)}; expected (B, 1, H, W): one channel "
                         f"(Y), e.g. x.unsqueeze(1) for a (B, H, W) batch.")
    return x


class RecursiveSR(nn.Module):
    """Base: ``enet`` → ``R`` shared ``inet`` steps → shared ``rnet`` + skip → weighted sum."""

    enet: nn.Module
    inet: nn.Module
    rnet: nn.Module
    recursion_weights: nn.Parameter

    def _init_recursion_weights(self, recursions: int) -> None:
        self.recursion_weights = nn.Parameter(torch.full((recursions,), 1.0 / recursions))

    def _init_study(self, recursions: int, recursive_convs) -> None:
        """The study's initialisation: recursion weights 1/R, He for every conv of Enet and Rnet,
        identity self-connections for the recursive convs (biases zero throughout)."""
        self._init_recursion_weights(recursions)
        for m in (*self.enet.modules(), *self.rnet.modules()):
            if isinstance(m, nn.Conv2d):
                he_init_(m)
        for conv in recursive_convs:
            identity_init_(conv)

    @property
    def recursions(self) -> int:
        """Number of recursions ``R`` (the length of ``recursion_weights``)."""
        return int(self.recursion_weights.numel())

    def forward(self, x: Tensor, return_intermediates: bool = True) -> SROutput | Tensor:
        """Run the network on a Y-channel batch.

        Args:
            x: ``(B, 1, H, W)`` interpolated low-resolution Y channel.
            return_intermediates: If True (default) return an :class:`SROutput`; else only the
                final ``(B, 1, H, W)`` image.

        Returns:
            :class:`SROutput` ``(final, intermediates)`` or the final image.
        """
        x = check_input(x, type(self).__name__)
        h = self.enet(x)
        ys = []
        for _ in range(self.recursions):
            h = self.inet(h)
            ys.append(self.rnet(h) + x)
        w = self.recursion_weights.to(x.dtype)
        final = sum(w[r] * ys[r] for r in range(len(ys)))
        if not return_intermediates:
            return final
        return SROutput(final, ys)

    def predict(self, x: Tensor) -> Tensor:
        """Only the final image ``Σ_r w_r y_r``, shape ``(B, 1, H, W)``."""
        return self.forward(x, return_intermediates=False)

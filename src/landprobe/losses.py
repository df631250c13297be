"""The study's recursive-supervision loss, and DRCN's decay of its companion weight α."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

__all__ = ["RecursiveSupervisionLoss", "LossComponents", "AlphaSchedule"]

_REDUCTIONS = ("sum_over_pixels", "mean")


class LossComponents(NamedTuple):
    """The parts of :class:`RecursiveSupervisionLoss`: ``total = (1-α)·final + α·intermediate``.

    Example:
        >>> import torch
        >>> from landprobe.losses import LossComponents
        >>> LossComponents(torch.tensor(1.0), torch.tensor(2.0), torch.tensor(0.0)).final.item()
        2.0
    """

    total: Tensor
    final: Tensor
    intermediate: Tensor


def _sq(a: Tensor, b: Tensor) -> Tensor:
    return (a - b).pow(2).sum()


class RecursiveSupervisionLoss(nn.Module):
    """``(1−α)·L1 + α·L2`` of Xu & Zhang (after DRCN's recursive supervision).

    With a batch of ``N`` targets ``y_i``, final outputs ``ŷ_i`` and ``R`` intermediate outputs
    ``y_{r,i}`` (sums run over all pixels)::

        L1 = Σ_i ‖y_i − ŷ_i‖² / (2N)
        L2 = Σ_i Σ_r ‖y_i − y_{r,i}‖² / (2RN)

    ``reduction="sum_over_pixels"`` (default) is the study's formula as written.
    ``reduction="mean"`` divides both terms by the pixels per image ``C·H·W`` (a per-pixel mean);
    the literal scaling diverged with SGD at lr 0.01 without gradient clipping in our runs (see
    DESIGN.md, hardware notes), so a recipe may choose the mean variant.

    The output may be an :class:`landprobe.models.SROutput` ``(final, intermediates)`` (or any
    pair of a tensor and a sequence of tensors), or a bare tensor; for a bare tensor there are no
    intermediates and the loss is ``L1`` alone (α is ignored). The study's penalty ``L3`` is not
    part of this loss: add ``lp.SubnetNormPenalty`` yourself, ``loss = crit(out, y) + penalty()``.

    Args:
        alpha: α in [0, 1], the weight of the intermediate (companion) term. It may be changed
            between steps (``crit.alpha = schedule(epoch)``, see :class:`AlphaSchedule`).
        reduction: ``"sum_over_pixels"`` or ``"mean"``.

    Raises:
        ValueError: If ``alpha`` is outside [0, 1] or ``reduction`` unknown; on a shape mismatch.
        TypeError: If ``alpha`` is not a number or the output is not a tensor or pair.

    Example:
        >>> import torch
        >>> from landprobe.losses import RecursiveSupervisionLoss
        >>> y = torch.zeros(2, 1, 2, 2)                       # N = 2 images of 4 pixels
        >>> final = torch.ones(2, 1, 2, 2)                     # ‖y−ŷ‖² = 4 each: L1 = 8/4 = 2
        >>> inter = [torch.ones(2, 1, 2, 2), 2 * torch.ones(2, 1, 2, 2)]  # L2 = (8+32)/8 = 5
        >>> crit = RecursiveSupervisionLoss(alpha=0.5)
        >>> crit((final, inter), y).item()                      # 0.5*2 + 0.5*5
        3.5
        >>> crit.components((final, inter), y).intermediate.item()
        5.0
        >>> RecursiveSupervisionLoss(0.5, reduction="mean")((final, inter), y).item()  # / 4 pixels
        0.875
        >>> crit(final, y).item()                               # bare tensor: L1
        2.0
    """

    def __init__(self, alpha: float = 0.5, reduction: str = "sum_over_pixels") -> None:
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction={reduction!r}; expected one of {_REDUCTIONS}: "
                             f"'sum_over_pixels' is the study's formula, 'mean' divides by C*H*W.")
        self.reduction = reduction
        self.alpha = alpha

    @property
    def alpha(self) -> float:
        """α in [0, 1], the weight of the intermediate term."""
        return self._alpha

    @alpha.setter
    def alpha(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"alpha={value!r} ({type(value).__name__}); expected a float in [0, 1], "
                            f"e.g. alpha=0.5 or alpha=AlphaSchedule()(epoch).")
        if not (0.0 <= value <= 1.0) or math.isnan(value):
            raise ValueError(f"alpha={value!r}; expected a float in [0, 1] (0: final output only, "
                             f"1: intermediate outputs only). Clip it, e.g. min(max(a, 0.0), 1.0).")
        self._alpha = float(value)

    def _split(self, output: object) -> tuple[Tensor, Sequence[Tensor]]:
        if isinstance(output, Tensor):
            return output, []
        if isinstance(output, tuple) and len(output) == 2 and isinstance(output[0], Tensor) \
                and isinstance(output[1], (list, tuple)) \
                and all(isinstance(t, Tensor) for t in output[1]):
            return output[0], output[1]
        raise TypeError(f"output of type {type(output).__name__}; expected a Tensor or a pair "
                        f"(final, [intermediate, ...]) such as the SROutput a landprobe model returns.")

    def components(self, output: object, target: Tensor) -> LossComponents:
        """The total and its terms ``L1`` (final) and ``L2`` (intermediate), as tensors.

        Args:
            output: A tensor or ``(final, intermediates)``.
            target: ``(N, C, H, W)``, the same shape as every output image.

        Returns:
            :class:`LossComponents`; ``intermediate`` is 0 when there are no intermediates.

        Example:
            >>> import torch
            >>> from landprobe.losses import RecursiveSupervisionLoss
            >>> y = torch.zeros(1, 1, 1, 2)
            >>> c = RecursiveSupervisionLoss(0.0).components((torch.ones(1, 1, 1, 2), []), y)
            >>> c.total.item(), c.final.item()                   # 2 / (2*1)
            (1.0, 1.0)
        """
        final, inters = self._split(output)
        for name, t in [("final", final)] + [(f"intermediates[{r}]", t) for r, t in enumerate(inters)]:
            if t.shape != target.shape:
                raise ValueError(f"output {name} has shape {tuple(t.shape)} but target has "
                                 f"{tuple(target.shape)}; expected equal shapes (N, C, H, W). "
                                 f"Crop or resize the target to the network's output.")
        if target.ndim == 0:
            raise ValueError("target is a scalar; expected a batch (N, ...) with N >= 1.")
        n = target.shape[0]
        scale = 2.0 * n
        if self.reduction == "mean":
            scale *= target[0].numel()
        l1 = _sq(final, target) / scale
        if inters:
            l2 = sum(_sq(t, target) for t in inters) / (scale * len(inters))
            total = (1.0 - self.alpha) * l1 + self.alpha * l2
        else:
            l2 = torch.zeros((), dtype=l1.dtype, device=l1.device)
            total = l1
        return LossComponents(total, l1, l2)

    def forward(self, output: object, target: Tensor) -> Tensor:
        """The scalar loss ``(1−α)·L1 + α·L2`` (``L1`` for a bare tensor output)."""
        return self.components(output, target).total


class AlphaSchedule:
    """Linear decay of α from ``start`` to ``end`` over ``epochs``, then constant at ``end``.

    DRCN (Kim et al. 2016) weights its intermediate (companion) objective by α and decays it
    during training, so that early training is driven by the intermediate outputs and late
    training by the final one; the study does not state its schedule. Our default, 1.0 → 0.0
    linearly over ``epochs`` (45 in the study), is a choice, not a reproduced fact.

    Args:
        start: α at epoch 0, in [0, 1].
        end: α from ``epochs`` on, in [0, 1].
        epochs: Length of the decay, a positive int.

    Raises:
        ValueError: If ``start``/``end`` are outside [0, 1] or ``epochs < 1``.
        TypeError: If ``epochs`` is not an int.

    Example:
        >>> from landprobe.losses import AlphaSchedule
        >>> sched = AlphaSchedule(start=1.0, end=0.0, epochs=4)
        >>> [sched(e) for e in range(6)]
        [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    """

    def __init__(self, start: float = 1.0, end: float = 0.0, epochs: int = 45) -> None:
        for name, v in (("start", start), ("end", end)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0.0 <= v <= 1.0):
                raise ValueError(f"{name}={v!r}; expected a float in [0, 1], e.g. start=1.0, end=0.0.")
        if isinstance(epochs, bool) or not isinstance(epochs, int):
            raise TypeError(f"epochs={epochs!r} ({type(epochs).__name__}); expected a positive int, "
                            f"e.g. epochs=45 (the study's length).")
        if epochs < 1:
            raise ValueError(f"epochs={epochs!r}; expected a positive int, e.g. epochs=45.")
        self.start, self.end, self.epochs = float(start), float(end), epochs

    def __call__(self, epoch: int) -> float:
        """α at ``epoch`` (0-based); negative epochs give ``start``."""
        t = min(max(epoch / self.epochs, 0.0), 1.0)
        return self.start + (self.end - self.start) * t

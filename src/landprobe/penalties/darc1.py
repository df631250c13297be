"""DARC1: the output-based regulariser of Kawaguchi, Kaelbling & Bengio 2017 ("Generalization in deep learning", §5).

For a mini-batch of ``m̄`` samples and a network with ``K`` output units ``h_k`` (pre-softmax),

    DARC1 = λ / m̄ · max_k Σ_(i=1..m̄) |h_k(x_i)|

It is added to the training loss like :class:`~landprobe.SubnetNormPenalty`, but it is a
function of the outputs, not of the parameters: ``loss = criterion(out, y) + darc1(out)``.
"""

from __future__ import annotations

import math
import numbers

from torch import Tensor

__all__ = ["DARC1Penalty"]


class DARC1Penalty:
    """``λ/m̄ · max_k Σ_i |h_k(x_i)|`` on a batch of outputs ``h`` (Kawaguchi et al. 2017, Eq. 9).

    Convention:
        Outputs of shape ``(m̄, K)`` are (batch, output units); the model's raw outputs (logits,
        before any softmax) are meant. A 1-D output ``(m̄,)`` is one unit (K = 1). An output
        with more dimensions, such as an image ``(m̄, C, H, W)`` of a super-resolution network,
        is flattened to ``(m̄, C·H·W)``: every output pixel of every channel is one unit ``k``.

    Args:
        weight: λ, a finite non-negative float (Kawaguchi et al. use λ = 0.001 on MNIST/CIFAR).

    Attributes:
        last: The (weighted) value of the last call as a float, ``None`` before the first.
        last_unit: The flat index ``k`` of the unit that attained the maximum in the last call.

    Raises:
        TypeError: If ``weight`` is not a real number (or is a bool).
        ValueError: If ``weight`` is negative or not finite.

    Example:
        >>> import torch
        >>> from landprobe.penalties.darc1 import DARC1Penalty                           # also lp.DARC1Penalty
        >>> darc1 = DARC1Penalty(0.5)
        >>> h = torch.tensor([[1.0, -2.0], [3.0, 1.0]], requires_grad=True)  # column sums of |h|: 4, 3
        >>> value = darc1(h)                                                  # 0.5 / 2 * 4
        >>> value
        tensor(1., grad_fn=<MulBackward0>)
        >>> value.backward(); h.grad                                          # 0.25 * sign(h) in column 0
        tensor([[0.2500, 0.0000],
                [0.2500, 0.0000]])
        >>> darc1.breakdown(), darc1.breakdown(weighted=False)                # 4 / 2 unweighted
        ({'darc1': 1.0}, {'darc1': 2.0})
    """

    def __init__(self, weight: float = 1e-3):
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
            raise TypeError(f"weight={weight!r} has type {type(weight).__name__}; expected a non-negative float "
                            f"such as 1e-3 (Kawaguchi et al. 2017)")
        w = float(weight)
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"weight={weight!r}; expected a finite, non-negative float such as 1e-3 "
                             f"(use 0.0 to switch the penalty off)")
        self.weight = w
        self.last: float | None = None
        self.last_unit: int | None = None
        self._raw: float | None = None

    def __repr__(self) -> str:
        return f"DARC1Penalty(weight={self.weight})"

    def __call__(self, outputs: Tensor) -> Tensor:
        """The penalty on a batch of outputs, as a differentiable scalar (0-dim tensor).

        Raises:
            TypeError: If ``outputs`` is not a tensor (a model returning several outputs: pass
                the one to regularise, e.g. ``darc1(out[-1])``).
            ValueError: If ``outputs`` is 0-dimensional, empty, or not floating point.
        """
        if not isinstance(outputs, Tensor):
            raise TypeError(f"DARC1Penalty expects the model's output tensor (batch, units), got "
                            f"{type(outputs).__name__}; for a model with several outputs pass the one to "
                            f"regularise, e.g. darc1(outputs[-1])")
        if outputs.dim() == 0:
            raise ValueError("DARC1Penalty needs a batch of outputs of shape (batch, units), got a 0-dim tensor; "
                             "pass the outputs of a whole mini-batch")
        if outputs.shape[0] == 0 or outputs.numel() == 0:
            raise ValueError(f"DARC1Penalty got an empty batch of outputs, shape {tuple(outputs.shape)}")
        if not outputs.is_floating_point():
            raise ValueError(f"DARC1Penalty needs floating-point outputs (logits), got dtype {outputs.dtype}")
        h = outputs.reshape(outputs.shape[0], -1)
        sums = h.abs().sum(dim=0)                      # Σ_i |h_k(x_i)| for each unit k
        top, unit = sums.max(dim=0)
        value = top * (self.weight / h.shape[0])
        self.last = float(value.detach())
        self._raw = float(top.detach()) / h.shape[0]
        self.last_unit = int(unit)
        return value

    def breakdown(self, weighted: bool = True) -> dict[str, float]:
        """``{"darc1": value}`` of the last call (weighted by λ unless ``weighted=False``), as
        :meth:`SubnetNormPenalty.breakdown` returns per-subnet values.

        Raises:
            ValueError: If the penalty has not been called yet.

        Example:
            >>> import torch
            >>> from landprobe.penalties.darc1 import DARC1Penalty
            >>> pen = DARC1Penalty(0.1)
            >>> _ = pen(torch.tensor([[2.0], [-4.0]]))              # 0.1 / 2 * (2 + 4)
            >>> round(pen.breakdown()["darc1"], 12), pen.breakdown(weighted=False)
            (0.3, {'darc1': 3.0})
        """
        if self.last is None:
            raise ValueError("DARC1Penalty.breakdown: no value yet; call the penalty on a batch of outputs first")
        return {"darc1": self.last if weighted else self._raw}

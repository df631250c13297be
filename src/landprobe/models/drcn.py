"""DRCN, the deeply-recursive convolutional network of Kim, Lee & Lee (CVPR 2016)."""

from __future__ import annotations

from torch import nn

from landprobe.models._recursive import (
    RecursiveSR, _check_positive_int, _check_width, _scaled,
)


class DRCN(RecursiveSR):
    """DRCN: embedding → one 3x3 conv recurred ``D`` times → reconstruction, recursive supervision.

    Subnets carry the study's names so that ``SubnetNormPenalty.preset`` works on both models:
    ``enet`` = DRCN's embedding net (3x3 1→F, ReLU, 3x3 F→F, ReLU), ``inet`` = its inference net
    (one shared 3x3 F→F conv + ReLU, applied ``D`` times), ``rnet`` = its reconstruction net
    (3x3 F→F, ReLU, 3x3 F→1), shared across recursions. ``y_d = rnet(h_d) + x`` (skip) and the
    output is ``Σ_d w_d y_d`` with ``D`` learned weights. Returns :class:`SROutput` like
    :class:`WarshipXZNetBeta`.

    Parameters, ``F = 256``, ``D = 16``::

        enet.conv1   1→256 3x3        2,304 + 256 =     2,560
        enet.conv2 256→256 3x3      589,824 + 256 =   590,080
        inet.conv  256→256 3x3      589,824 + 256 =   590,080
        rnet.conv1 256→256 3x3      589,824 + 256 =   590,080
        rnet.conv2   256→1 3x3        2,304 +   1 =     2,305
        recursion_weights                                  16
        total                                       1,775,121

    The paper's 1.77M is the weights alone: 1,774,080; ours adds 1,025 biases and 16 ensemble
    weights (+1,041, +0.06 %).

    Initialisation: He normal (fan_in) for the non-recursive convs, the recursive conv zero
    except identity self-connections, biases zero, weights ``1/D``.

    Args:
        width: Multiplier of the 256 features (rounded, at least 1).
        recursions: ``D``, the number of recursions (16 in DRCN).

    Raises:
        TypeError: If ``width`` is not a number or ``recursions`` not an int.
        ValueError: If ``width <= 0`` or ``recursions < 1``.

    Example:
        >>> import torch
        >>> from landprobe import models
        >>> sum(p.numel() for p in models.DRCN().parameters())   # see the table above
        1775121
        >>> small = models.DRCN(width=0.0625, recursions=3)       # 16 features
        >>> out = small(torch.rand(1, 1, 8, 8))
        >>> out.final.shape, len(out.intermediates)
        (torch.Size([1, 1, 8, 8]), 3)
    """

    PAPER_WEIGHTS = 1_774_080  # Kim et al. 2016: "1.77M", weights without biases
    FEATURES = 256

    def __init__(self, width: float = 1.0, recursions: int = 16) -> None:
        super().__init__()
        width = _check_width(width)
        recursions = _check_positive_int("recursions", recursions,
                                         "DRCN recurs its inference conv 16 times: recursions=16.")
        f = _scaled(width, self.FEATURES)
        self.width = width
        self.enet = nn.Sequential()
        self.enet.add_module("conv1", nn.Conv2d(1, f, 3, padding=1))
        self.enet.add_module("relu1", nn.ReLU())
        self.enet.add_module("conv2", nn.Conv2d(f, f, 3, padding=1))
        self.enet.add_module("relu2", nn.ReLU())
        self.inet = nn.Sequential()
        self.inet.add_module("conv", nn.Conv2d(f, f, 3, padding=1))
        self.inet.add_module("relu", nn.ReLU())
        self.rnet = nn.Sequential()
        self.rnet.add_module("conv1", nn.Conv2d(f, f, 3, padding=1))
        self.rnet.add_module("relu1", nn.ReLU())
        self.rnet.add_module("conv2", nn.Conv2d(f, 1, 3, padding=1))
        self._init_study(recursions, [self.inet.conv])

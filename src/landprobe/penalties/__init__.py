"""Capacity control in the training loop: subnet-wise norm penalties and DARC1.

:class:`SubnetNormPenalty` (``subnet.py``) adds a weighted norm of each named subnet's
parameters to the user's loss; :class:`DARC1Penalty` (``darc1.py``) is Kawaguchi et al.'s
data-dependent regularizer on the network's outputs.
"""

from landprobe.penalties.darc1 import DARC1Penalty
from landprobe.penalties.subnet import KINDS, SubnetNormPenalty

__all__ = ["SubnetNormPenalty", "DARC1Penalty", "KINDS"]

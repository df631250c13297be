"""Recursive super-resolution networks: WARSHIP-XZNet β (the study's) and DRCN.

Both have submodules ``enet``, ``inet`` (recurred, shared weights) and ``rnet`` (shared), so
``SubnetNormPenalty.preset`` applies to either, and both return :class:`SROutput`.
"""

from landprobe.models._recursive import SROutput
from landprobe.models.drcn import DRCN
from landprobe.models.warship import WarshipXZNetBeta

__all__ = ["SROutput", "WarshipXZNetBeta", "DRCN"]

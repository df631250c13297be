"""``torch.distributed`` as every layer may ask it: which rank am I, of how many. The
collectives of the probes live in :mod:`landprobe.engine.shards`.

Example:
    >>> from landprobe.common.distributed import rank_and_world
    >>> rank_and_world()                                  # no process group: one process
    (0, 1)
"""

from __future__ import annotations

import torch

__all__ = ["rank_and_world"]


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` without one."""
    d = torch.distributed
    if d.is_available() and d.is_initialized():
        return d.get_rank(), d.get_world_size()
    return 0, 1

"""``torch.distributed`` as the probes use it: who am I, and gather what every rank computed.

Example:
    >>> from landprobe.common.distributed import rank_and_world, merge_across_ranks
    >>> rank_and_world()                                  # no process group: one process
    (0, 1)
    >>> merge_across_ranks({0: "a", 2: "c"})              # nothing to gather alone
    {0: 'a', 2: 'c'}
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["rank_and_world", "merge_across_ranks"]


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` without one."""
    d = torch.distributed
    if d.is_available() and d.is_initialized():
        return d.get_rank(), d.get_world_size()
    return 0, 1


def merge_across_ranks(mine: dict[Any, Any]) -> dict[Any, Any]:
    """Every rank's ``{key: value}`` merged into one dict on every rank (``all_gather_object``).

    The keys of different ranks must not overlap (each rank computed its own share).
    """
    rank, world = rank_and_world()
    if world == 1:
        return mine
    gathered: list[Any] = [None] * world
    torch.distributed.all_gather_object(gathered, mine)
    out: dict[Any, Any] = {}
    for part in gathered:
        out.update(part)
    return out

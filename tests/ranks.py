"""Run a function on several gloo processes (CPU) and collect what each rank returned.

``run_ranks(world, target, *args)`` starts ``world`` processes, each initialising a gloo
process group (file rendezvous in a fresh folder), calls ``target(rank, world, *args)``
(a module-level function of an importable test module) and returns the list of the ranks'
return values. An exception on a rank is returned as an :class:`Raised` (type name and
message) instead of a value, so a test can check that every rank reported an error. One
torch thread per process; the processes are killed after ``timeout`` seconds.
"""

from __future__ import annotations

import os
import pickle
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.multiprocessing as mp

HERE = os.path.dirname(os.path.abspath(__file__))


@dataclass
class Raised:
    """An exception a rank raised: its type name and message, and how long the rank ran."""

    kind: str
    message: str
    seconds: float


def _entry(rank: int, world: int, folder: str, target: Callable, args: tuple) -> None:
    import datetime

    import torch.distributed as dist

    sys.path.insert(0, HERE)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/init", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    start = time.monotonic()
    try:
        out: Any = target(rank, world, *args)
    except Exception as exc:  # noqa: BLE001 - reported to the test
        out = Raised(type(exc).__name__, str(exc), time.monotonic() - start)
    with open(os.path.join(folder, f"rank{rank}.pkl"), "wb") as fh:
        pickle.dump(out, fh)
    # No destroy_process_group: a rank that raised may leave peers mid-collective.
    os._exit(0)


def run_ranks(world: int, target: Callable, *args: Any, timeout: float = 180.0) -> list[Any]:
    """``[target(rank, world, *args) for rank in range(world)]``, each in its own gloo process."""
    with tempfile.TemporaryDirectory() as folder:
        ctx = mp.start_processes(_entry, args=(world, folder, target, args), nprocs=world, join=False,
                                 start_method="spawn")
        deadline = time.monotonic() + timeout
        while not ctx.join(timeout=max(0.1, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                for p in ctx.processes:
                    p.kill()
                raise TimeoutError(f"{world} ranks of {target.__name__} did not finish within {timeout} s")
        out = []
        for rank in range(world):
            path = os.path.join(folder, f"rank{rank}.pkl")
            if not os.path.exists(path):
                raise RuntimeError(f"rank {rank} of {target.__name__} exited without a result")
            with open(path, "rb") as fh:
                out.append(pickle.load(fh))
        return out

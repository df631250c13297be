"""Paths between minima: fitted curves (Bezier, polychain), AutoNEB and level-set searches.

Import order inside: ``path`` (the result) <- ``common`` (measurement, coefficients,
checkpoints) <- ``neb`` <- ``connect``; ``levelset`` beside them. Every pass over the data
goes through the engine; under data sharding (``landprobe.Sharding(data=True)``) every fit
step is shared by the ranks and every decision taken on values summed over them, so every
rank returns the one-process result, and rank 0 alone writes the checkpoints.
"""

from landprobe.probes.curves.common import FitDivergedError
from landprobe.probes.curves.connect import connect
from landprobe.probes.curves.levelset import LevelSet, level_set
from landprobe.probes.curves.neb import NebCycle, auto_neb, paper_schedule
from landprobe.probes.curves.path import Path

__all__ = ["Path", "LevelSet", "NebCycle", "FitDivergedError", "connect", "auto_neb", "paper_schedule",
           "level_set"]

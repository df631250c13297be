"""Landscape probes built on one evaluation engine.

Each probe is a method of :class:`LandscapeProbe`; the functions live in their own modules
(one per probe family) and are bound here.
"""

from landprobe.probes import toys
from landprobe.probes.connect import Path, connect
from landprobe.probes.landscape import LandscapeProbe
from landprobe.probes.levelset import LevelSet, level_set
from landprobe.probes.neb import auto_neb, paper_schedule
from landprobe.probes.perturb import PerturbationResult, perturb
from landprobe.probes.plane import Surface, plane
from landprobe.probes.results import Curve
from landprobe.probes.trajectory import TrajectoryMDS, TrajectoryPCA, TrajectoryRecorder, classical_mds

LandscapeProbe.plane = plane
LandscapeProbe.perturb = perturb
LandscapeProbe.connect = connect
LandscapeProbe.auto_neb = auto_neb
LandscapeProbe.level_set = level_set

__all__ = [
    "LandscapeProbe",
    # results
    "Curve",
    "Surface",
    "Path",
    "LevelSet",
    "PerturbationResult",
    # trajectories
    "TrajectoryRecorder",
    "TrajectoryPCA",
    "TrajectoryMDS",
    "classical_mds",
    # AutoNEB's cycle schedule and the analytic toys
    "paper_schedule",
    "toys",
]

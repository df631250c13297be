"""Landscape probes built on the evaluation engine.

:class:`LandscapeProbe` is the user's door: its methods delegate to one function per probe
family (``interpolate``, ``plane``, ``perturb``, ``curves``), each taking the engine.
"""

from landprobe.probes import toys
from landprobe.probes.curves import (FitDivergedError, LevelSet, NebCycle, Path, auto_neb, connect, level_set,
                                     paper_schedule)
from landprobe.probes.interpolate import interpolate
from landprobe.probes.landscape import LandscapeProbe
from landprobe.probes.perturb import PerturbationResult, perturb
from landprobe.probes.plane import Surface, plane
from landprobe.probes.results import Curve
from landprobe.probes.trajectory import TrajectoryMDS, TrajectoryPCA, TrajectoryRecorder, classical_mds

__all__ = [
    "LandscapeProbe",
    # the probe functions (each takes an Engine or a LandscapeProbe)
    "interpolate",
    "plane",
    "connect",
    "auto_neb",
    "level_set",
    "perturb",
    # results
    "Curve",
    "Surface",
    "Path",
    "LevelSet",
    "PerturbationResult",
    # the error of a path search whose fit met a non-finite loss
    "FitDivergedError",
    # trajectories
    "TrajectoryRecorder",
    "TrajectoryPCA",
    "TrajectoryMDS",
    "classical_mds",
    # AutoNEB's cycle schedule and the analytic toys
    "paper_schedule",
    "NebCycle",
    "toys",
]

"""landprobe: landscape probes for PyTorch.

Attach a :class:`SubnetNormPenalty` to any model, call ``probe.interpolate(theta_a, theta_b)``
and go on from there to planes, curves between minima, level sets, Hessian spectra and
capacity measures.
"""

from landprobe.common.version import __version__
from landprobe.common.io import LoadError

# the spine: parameter vectors and subnet selectors
from landprobe.params import ParamVector, select, select_subnets

# the engine under every probe, and the loss/data contract
from landprobe import engine
from landprobe.engine import BatchLoss, RankFailedError, Sharding

# capacity control and measures
from landprobe.penalties import SubnetNormPenalty
from landprobe.penalties import DARC1Penalty
from landprobe import capacity
from landprobe.capacity import CapacityReport

# probes and their results
from landprobe.probes import (
    Curve, LandscapeProbe, LevelSet, Path, PerturbationResult, Surface, TrajectoryMDS, TrajectoryPCA,
    TrajectoryRecorder,
)
from landprobe import probes

# curvature: probe.hessian(...) and its spectra
from landprobe import curvature
from landprobe.curvature import Eigenpairs, HessianOperator, Spectrum, TraceEstimate


# permutation symmetry: align two networks, barriers modulo symmetry, merging
from landprobe import symmetry

# training-time monitoring
from landprobe.monitor import LandscapeMonitor, MonitorHistory

# the generalization experiments beside the landscape: SGLD, bounds, memorization, two-phase training
from landprobe import generalization, optim

# the super-resolution study's layers (subpackages)
from landprobe import data, losses, metrics, models  # noqa: E402  (after the spine: they may use it)
from landprobe import recipes  # noqa: E402

__all__ = [
    "__version__",
    "LoadError",
    # spine
    "ParamVector",
    "select",
    "select_subnets",
    # the engine and the data contract
    "engine",
    "BatchLoss",
    "Sharding",
    "RankFailedError",
    # capacity control
    "SubnetNormPenalty",
    "DARC1Penalty",
    "capacity",
    "CapacityReport",
    "LandscapeMonitor",
    "MonitorHistory",
    # probes and results
    "LandscapeProbe",
    "Curve",
    "Surface",
    "Path",
    "LevelSet",
    "PerturbationResult",
    "TrajectoryRecorder",
    "TrajectoryPCA",
    "TrajectoryMDS",
    "HessianOperator",
    "Eigenpairs",
    "TraceEstimate",
    "Spectrum",
    "probes",
    "curvature",
    "symmetry",
    "optim",
    "generalization",
    # subpackages
    "data",
    "metrics",
    "models",
    "losses",
    "recipes",
]
